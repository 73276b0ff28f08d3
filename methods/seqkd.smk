# Sequence-level KD (Kim & Rush, EMNLP 2016): the student is fine-tuned on the teacher's own
# responses. This plugin rule writes them; the label `seqkd` (config/variants.yaml) trains `sft`-style
# on that file through `method_defs.seqkd.train_data`. No core file names seqkd.


rule seqkd_data:
    input:
        model=lambda w: GRID.teacher_path(w.pair),
        data=GRID.data_files["train"],
    output:
        f"{RES}/data/seqkd/{{pair}}/train.jsonl",
    params:
        max_new_tokens=lambda w: GRID.training(w.pair)["sample_max_new_tokens"],
        prompt_format=CFG["evaluation"]["prompt_format"],
    log:
        f"{RES}/logs/seqkd/{{pair}}.log",
    threads: 1
    resources:  # one GPU, claimed by the job itself (kdbench.gpus); the rest from the pair file
        gpu=1,
        runtime=pair_resource("generate", "runtime"),
        mem_mb=pair_resource("generate", "mem_mb"),
        cpus_per_task=pair_resource("generate", "cpus"),
    conda:
        ENV
    script:
        "_seqkd_generate.py"
