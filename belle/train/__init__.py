"""`belle train`: supervised fine-tuning, continued pretraining and DPO, full or LoRA, on the Trainer."""
