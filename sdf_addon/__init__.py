"""Synthetic document fine-tuning (SDF) add-on for steerlab.

Will hold: universe contexts (``universes/*.yaml``), document generation (``docgen.py``),
LoRA fine-tuning with peft/accelerate (``train.py``) and evaluation of the resulting
checkpoints on steerlab's alignment-faking harness (``eval.py``). Nothing is implemented
yet; the package exists so the layout is fixed from the start.
"""
