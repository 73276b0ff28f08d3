"""Turn evaluation result JSONs into paper tables: mean ± std of ROUGE-L per method and eval set,
the published numbers beside ours, paired-bootstrap significance and the paper's claims.

- :mod:`~kdbench.aggregate.results`: reading the inputs (result JSONs at
  ``.../evals/{pair}/{method}/seed{train_seed}/{set}.json``, the ``{set}.predictions.jsonl`` beside
  each, against which every result's scores are checked before a table is written, lm-eval results);
- :mod:`~kdbench.aggregate.statistics`: mean ± std over (training seed × decoding seed), the Avg over
  sets, the paired and stratified bootstrap over examples;
- :mod:`~kdbench.aggregate.tables`: the display tables, their headers, LaTeX;
- :mod:`~kdbench.aggregate.reference`: the published numbers of ``evaluation/reference/*.csv``
  beside ours, matched through ``evaluation/reference/labels.yaml``;
- :mod:`~kdbench.aggregate.claims`: the paper's claims of ``evaluation/reference/claims.yaml``, measured;
- :mod:`~kdbench.aggregate.commands`: ``kdbench aggregate`` (:func:`main`), ``kdbench lm-eval-table``
  (:func:`lm_eval_main`), ``kdbench combine-tables`` (:func:`combine_main`).
"""

from __future__ import annotations

from kdbench.aggregate.claims import (
    CLAIM_COLUMNS,
    DEFAULT_CLAIMS,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    ClaimSet,
    claims_header,
    claims_stats,
    claims_table,
    load_claims,
)
from kdbench.aggregate.commands import combine_main, lm_eval_main, main
from kdbench.aggregate.reference import (
    DEFAULT_LABELS,
    PUBLISHED_COLUMNS,
    REFERENCE_COLUMNS,
    PaperLabel,
    beside_header,
    beside_stats,
    beside_table,
    load_labels,
    match_published,
    published,
    read_reference,
)
from kdbench.aggregate.results import (
    AVG,
    COLUMNS,
    LM_EVAL_COLUMNS,
    MISSING,
    PREDICTION_COLUMNS,
    collect,
    collect_lm_eval,
    load_predictions,
    verify_results,
)
from kdbench.aggregate.statistics import (
    BOOTSTRAP_N,
    SIGNIFICANCE_COLUMNS,
    compare,
    default_comparisons,
    paired_bootstrap,
    significance_stats,
    stratified_bootstrap,
)
from kdbench.aggregate.tables import (
    bootstrap_header,
    cell_stats,
    lm_eval_header,
    lm_eval_stats,
    main_table,
    significance_table,
    table_header,
    to_latex,
)

__all__ = [
    "AVG", "BOOTSTRAP_N", "CLAIM_COLUMNS", "COLUMNS", "DEFAULT_CLAIMS", "DEFAULT_LABELS", "LM_EVAL_COLUMNS",
    "MISSING", "NOT_MEASURED", "NOT_SUPPORTED", "PREDICTION_COLUMNS", "PUBLISHED_COLUMNS", "REFERENCE_COLUMNS",
    "SIGNIFICANCE_COLUMNS", "SUPPORTED", "Claim", "ClaimSet", "PaperLabel", "beside_header", "beside_stats",
    "beside_table", "bootstrap_header", "cell_stats", "claims_header", "claims_stats", "claims_table", "collect",
    "collect_lm_eval", "combine_main", "compare", "default_comparisons", "lm_eval_header", "lm_eval_main",
    "lm_eval_stats", "load_claims", "load_labels", "load_predictions", "main", "main_table", "match_published",
    "paired_bootstrap", "published", "read_reference", "significance_stats", "significance_table",
    "stratified_bootstrap", "table_header", "to_latex", "verify_results",
]
