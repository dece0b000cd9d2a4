"""Learning from each farm: the organization's evidence, fine-tuning jobs, promotion and rollback."""
