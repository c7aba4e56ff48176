"""Scoring predictions against ground truth: one engine for every protocol, one case, one folder, many teams.

=================  ===============================================================
module             what it holds
=================  ===============================================================
``engine``         `score_label_maps`: every region's metrics on two arrays (pure)
``prediction``     a prediction file checked and brought onto the ground truth's grid
``case``           `score_case` and the task that scores one case in a worker
``batch``          `score_folder`, `score_teams`, `score` (tables written, resumable)
``tables``         `score_columns`, `summarize_scores`, `official_table` (pure)
=================  ===============================================================

The policy for edge cases, in one place (FLARE22 official behaviour unless
noted; a region protocol's empty-mask values are its metrics' ``both_empty`` and
``one_empty``, and under ``unusable_prediction = "empty"`` a prediction that
cannot be used is scored as an empty mask instead of 0):

===============================  =====================  ==========================
situation (per organ)            DSC                    NSD
===============================  =====================  ==========================
GT empty, prediction empty       ``both_empty_score``   ``both_empty_score`` (1)
GT empty, prediction present     0                      0
GT present, prediction empty     0                      0
slice-range organ (5, 6, 10)     on the cut arrays      on the cut arrays
GT of such an organ on 1 slice   on that slice          on that slice (official
                                                        script crashes)
prediction file missing          0, status ``missing``  0
prediction on the same physical  scored after exact     scored; status
grid, other orientation          reorientation          ``reoriented``
prediction on another grid       0, status              0 (with ``resample``:
                                 ``geometry_mismatch``  nearest neighbour,
                                                        ``resampled``)
prediction unreadable/invalid    0, status              0
(a link, detached data, ...)     ``invalid_prediction``
scoring beyond the protocol's    0, status              0
``scoring_limits``               ``time_limit`` or
                                 ``memory_limit``
header claims another voxel      0, status              0; the data is never
count than the GT (a bomb)       ``geometry_mismatch``  read (with ``resample``:
                                                        read up to
                                                        `MAX_RESAMPLE_BYTES`,
                                                        else
                                                        ``invalid_prediction``)
label value not in protocol      treated as background, with a warning (or the
                                 protocol's ``invalid_labels`` rule)
===============================  =====================  ==========================
"""

from ..errors import (
    SCORED_STATUSES,
    STATUS_GEOMETRY_MISMATCH,
    STATUS_INVALID_PREDICTION,
    STATUS_MEMORY_LIMIT,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_REORIENTED,
    STATUS_RESAMPLED,
    STATUS_TIME_LIMIT,
    FlareEvalWarning,
)
from .batch import ScoreFiles, score, score_folder, score_teams, team_folders
from .case import score_case
from .engine import score_label_maps
from .prediction import MAX_RESAMPLE_BYTES
from .tables import official_table, score_columns, summarize_scores

__all__ = [
    "FlareEvalWarning",
    "score_case",
    "score_label_maps",
    "score_folder",
    "summarize_scores",
    "official_table",
    "score_columns",
    "score",
    "score_teams",
    "team_folders",
    "ScoreFiles",
    "STATUS_OK",
    "STATUS_REORIENTED",
    "STATUS_RESAMPLED",
    "SCORED_STATUSES",
    "STATUS_MISSING",
    "STATUS_GEOMETRY_MISMATCH",
    "STATUS_INVALID_PREDICTION",
    "STATUS_TIME_LIMIT",
    "STATUS_MEMORY_LIMIT",
    "MAX_RESAMPLE_BYTES",
]
