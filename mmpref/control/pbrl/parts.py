"""The optional parts of the PbRL loop, taken by name from :class:`~mmpref.control.pbrl.loop.PbRLConfig.parts`.

| name | paper | what it changes in the loop |
|---|---|---|
| ``surf`` | Park et al. 2022 (SURF) | longer stored segments, labels on the central window, the reward update |
| ``rune`` | Liang et al. 2022 (RUNE) | the policy's reward: + β_t · the ensemble's std |
| ``rime`` | Cheng et al. 2024 (RIME) | the reward update (denoising discriminator), a warm start after pre-training |
| ``qpa`` | Hu et al. 2023 (QPA) | query candidates from the recent episodes, SAC's replay sampling |
| ``listwise`` | (Plackett-Luce / RankList of the core) | the whole feedback round: rankings of K segments |

A part is an object with ``name``, ``state_dict()`` / ``load_state_dict()`` and any of the hooks the loop looks for:
``segment_length(H)``, ``query_episodes(episodes)``, ``label(loop, queries)``, ``update_reward(loop, new)``,
``feedback_round(loop)``, ``bonus(ensemble, obs, actions, step)``, ``sac_kwargs(episode_length)``. Each hook may be
provided by at most one part (``validate_parts`` refuses combinations that would compete for one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from mmpref.control.pbrl.config import PbRLConfig

PartName = Literal["surf", "rune", "rime", "qpa", "listwise"]
HOOKS = ("segment_length", "query_episodes", "label", "update_reward", "feedback_round", "bonus", "sac_kwargs")


def validate_parts(names: Sequence[str]) -> None:
    """Refuse unknown names, repeats and parts that replace the same step (e.g. ``surf`` and ``rime``)."""
    valid = get_args(PartName)
    for name in names:
        if name not in valid:
            raise ValueError(f"unknown PbRL part {name!r} in parts; valid parts: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"parts lists a part twice: {list(names)}")
    exclusive = [n for n in names if n in ("surf", "rime", "listwise")]
    if len(exclusive) > 1:
        raise ValueError(
            f"parts {exclusive} each replace the reward update; choose one of them (set parts to one of {exclusive})"
        )


def build_parts(config: PbRLConfig) -> dict[str, Any]:
    """The part objects named in ``config.parts``, with their settings from the config's prefixed fields."""
    validate_parts(config.parts)
    parts: dict[str, Any] = {}
    for name in config.parts:
        if name == "surf":
            from mmpref.control.pbrl.surf import SURF

            parts[name] = SURF(
                tau=config.surf_tau,
                lam=config.surf_lambda,
                mu=config.surf_mu,
                unlabelled_ratio=config.surf_unlabelled_ratio,
                window=config.surf_window,
                crop=config.surf_crop,
            )
        elif name == "rune":
            from mmpref.control.pbrl.rune import RUNE

            parts[name] = RUNE(beta0=config.rune_beta0, decay=config.rune_decay)
        elif name == "rime":
            from mmpref.control.pbrl.rime import RIME

            parts[name] = RIME(
                alpha=config.rime_alpha,
                beta_max=config.rime_beta_max,
                beta_min=config.rime_beta_min,
                decay_updates=config.rime_decay_updates,
                warm_start_updates=config.rime_warm_start_updates,
                select_every=config.rime_select_every,
            )
        elif name == "qpa":
            from mmpref.control.pbrl.qpa import QPA

            parts[name] = QPA(recent_episodes=config.qpa_recent_episodes, hybrid_ratio=config.qpa_hybrid_ratio)
        else:
            from mmpref.control.pbrl.listwise import Listwise

            method = "uniform" if config.query_method == "uniform" else "disagreement"
            parts[name] = Listwise(k=config.list_size, loss=config.listwise_loss, query_method=method)
    return parts


def hook(parts: dict[str, Any], name: str) -> Any:
    """The bound hook ``name`` of the part that provides it, or ``None``."""
    for part in parts.values():
        method = getattr(part, name, None)
        if method is not None:
            return method
    return None
