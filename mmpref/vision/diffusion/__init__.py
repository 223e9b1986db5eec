"""Diffusion models fine-tuned on preferences.

A tiny text-conditioned digits model trained here, the Diffusion-DPO system (pairwise, listwise, personalized),
on-policy pair building, evaluation and real diffusers pipelines.

Modules are imported directly (``from mmpref.vision.diffusion.system import DiffusionDPOSystem``); this package
imports nothing heavy on its own, so ``diffusers`` / ``peft`` stay optional until used.
"""
