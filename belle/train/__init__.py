"""`belle train`: supervised fine-tuning, continued pretraining and DPO, full or LoRA, on the Trainer; and
`belle train merge`, which folds a LoRA adapter into its base model."""
