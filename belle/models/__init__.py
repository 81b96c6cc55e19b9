"""`belle model` (also `belle models`): build the tiny model (`belle.models.tiny`) and decrypt BELLE's
encrypted releases (`belle.models.decrypt`). Loading models is `belle.modeling`'s."""
