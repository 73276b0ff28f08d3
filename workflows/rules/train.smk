# One training job per run (teacher SFT runs are runs with method label `teacher`).


rule resolve_run:
    output:
        f"{RES}/runs/{{pair}}/{{method}}/seed{{seed}}/run.yaml",
    params:
        run=resolved_run,
    log:
        f"{RES}/logs/resolve/{{pair}}/{{method}}/seed{{seed}}.log",
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
    resources:
        gpu=lambda w: resolved_run(w)["training"]["gpus"] if GPU_NODE else 0,
    conda:
        ENV
    shell:
        "kdbench train {input.run} --threads {threads} > {log} 2>&1"
