"""Public import path kept for users (`from plad.losses import plad_rank_loss`); the losses live in plad.core.losses."""

from plad.core.losses import *  # noqa: F403
