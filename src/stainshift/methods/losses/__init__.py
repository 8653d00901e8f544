"""The built-in methods' losses, one per module, each with its formula and seed in the docstring.

=========================  ====================================================  ==========
module                     loss                                                  seed
=========================  ====================================================  ==========
``nt_xent``                NT-Xent over 2N views, chance log(2N − 1)             001, 000(c)
``latent_embedding``       ℓ_c latent-embedding contrast (Eq. 1), ℓ_e (Eq. 3)     000
``adversarial``            SASSL's stain discriminator / encoder terms (Eq. 4–6)  002
``negative_cosine``        SimSiam negative cosine with stop-gradient (Eq. 3)     002
``barlow_twins``           Barlow Twins cross-correlation loss                   003
``diagnostics``            collapse statistic, cross-entropy chance level        —
``class_weights``          balanced class weights of a cross-entropy             —
``distributed``            differentiable all-gather: losses on the global batch  —
=========================  ====================================================  ==========
"""
from __future__ import annotations

from stainshift.methods.losses.adversarial import (
    ADV_MODES,
    AFFINITY_SATURATION,
    affinity_matrix,
    discriminator_loss,
    generator_adversarial_loss,
    has_both_pair_sets,
    pair_means,
    relation_matrix,
    slide_codes,
)
from stainshift.methods.losses.barlow_twins import barlow_twins, barlow_twins_terms
from stainshift.methods.losses.class_weights import balanced_class_weights
from stainshift.methods.losses.diagnostics import embedding_spread, label_entropy
from stainshift.methods.losses.distributed import gather
from stainshift.methods.losses.latent_embedding import (
    latent_embedding_chance,
    latent_embedding_loss,
    latent_positive_accuracy,
    negative_indices,
    paired_ce_loss,
)
from stainshift.methods.losses.negative_cosine import negative_cosine
from stainshift.methods.losses.nt_xent import nt_xent, nt_xent_chance, positive_accuracy

__all__ = [
    "ADV_MODES",
    "AFFINITY_SATURATION",
    "affinity_matrix",
    "balanced_class_weights",
    "barlow_twins",
    "barlow_twins_terms",
    "discriminator_loss",
    "embedding_spread",
    "gather",
    "generator_adversarial_loss",
    "has_both_pair_sets",
    "label_entropy",
    "latent_embedding_chance",
    "latent_embedding_loss",
    "latent_positive_accuracy",
    "negative_cosine",
    "negative_indices",
    "nt_xent",
    "nt_xent_chance",
    "pair_means",
    "paired_ce_loss",
    "positive_accuracy",
    "relation_matrix",
    "slide_codes",
]
