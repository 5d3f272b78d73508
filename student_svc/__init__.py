"""StudentService: the student scores candidate training data and is evaluated.

- `scoring`: per-sample response loss in length-bucketed batches, LoBaSS learnability.
- `evaluation`: label-likelihood classification of an eval set.
- `models`: the per-base model cache and adapter wrapping (one model load for base and reference).
- `service`: the gRPC servicer (validation, artifacts, error mapping); `server`: `create_server`.

Run it with `python -m student_svc` (see `student_svc.__main__`).
"""
