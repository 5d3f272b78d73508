"""TeacherService: the teacher makes and vets training data for the student.

- `generation` — Self-Instruct seed expansion (prompts, parsing, records).
- `dedupe` — exact and near-duplicate detection shared by Generate and Critique.
- `critique` — the judge rules that keep or drop each example.
- `backend` — the `Backend` protocol and its transformers implementation.
- `service` — the gRPC servicer: validation, artifacts, error mapping.
- `server` / `__main__` — the server wiring and entry point (`python -m teacher_svc`).
"""
