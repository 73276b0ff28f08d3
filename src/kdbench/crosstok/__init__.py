"""Cross-tokenizer distillation: the teacher and the student have different tokenizers.

`align` maps student positions to teacher positions over one text (character offsets, or FuseLLM's
minimum edit distance); `vocab` builds the per-pair vocabulary artifact (common sub-vocabulary,
X-Token's sparse student->teacher projection, FuseLLM's edit-distance teacher->student map) from the
two tokenizers alone; `losses` holds the
methods' per-token formulas; `data` tokenizes a training example for both models and forms the
units of the loss (kdbench.losses.cross_objective reduces over them; the methods are `@crosstok`
plugins in methods/). Job-side code: these modules may import torch and tokenizers.
"""
