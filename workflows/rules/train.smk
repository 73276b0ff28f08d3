# One training job per run (teacher SFT runs are runs with method label `teacher`).


rule resolve_run:
    output:
        f"{RES}/runs/{{pair}}/{{method}}/seed{{seed}}/run.yaml",
    params:
        run=resolved_run,
    log:
        f"{RES}/logs/resolve/{{pair}}/{{method}}/seed{{seed}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/write_run.py"


rule train:
    input:
        unpack(train_inputs),
    output:
        model=directory(f"{RES}/runs/{{pair}}/{{method}}/seed{{seed}}/model"),
        metrics=f"{RES}/runs/{{pair}}/{{method}}/seed{{seed}}/metrics.jsonl",
        provenance=f"{RES}/runs/{{pair}}/{{method}}/seed{{seed}}/provenance.json",
    log:
        f"{RES}/runs/{{pair}}/{{method}}/seed{{seed}}/train.log",
    threads: 1
    resources:  # the job claims its GPUs itself (kdbench.gpus); runtime, memory, CPUs from the pair file
        gpu=lambda w: resolved_run(w)["training"]["gpus"],
        runtime=pair_resource("train", "runtime"),
        mem_mb=pair_resource("train", "mem_mb"),
        cpus_per_task=pair_resource("train", "cpus"),
    conda:
        ENV
    shell:
        "kdbench train {input.run} --threads {threads} > {log} 2>&1"
