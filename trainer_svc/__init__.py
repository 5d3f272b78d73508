"""TrainerService: LoRA SFT jobs for the student, streamed progress, adapters to the artifact store."""
