"""Synthetic document fine-tuning (SDF) add-on for steerlab.

``universes/*.yaml`` (fictional worlds in which one claim is true, :mod:`.universe`),
:mod:`.docgen` (brainstorm -> ideas -> documents -> revision -> filters, resumable),
:mod:`.train` (LoRA with peft through the transformers Trainer and accelerate, packing, round 2 on
a merged organism), :mod:`.evaluate` (checkpoints on steerlab's alignment-faking harness, belief
check) and the ``sdf`` command (:mod:`.cli`).
"""
