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


# With teacher_cache: the teacher's hidden states on a micro-batch stream that several runs of a pair
# read (kdbench.teacher_states), once, where each of those train jobs finds them (an input of each);
# deleted when the last of them has trained.
rule teacher_states:
    input:
        unpack(teacher_states_inputs),
    output:
        temp(f"{RES}/teacher_states/{{pair}}/seed{{seed}}/{{key}}.safetensors"),
    log:
        f"{RES}/logs/teacher_states/{{pair}}/seed{{seed}}/{{key}}.log",
    threads: 1  # as the train jobs': the same threads give the same bits
    params:
        micro_batches=teacher_states_micro_batches,
    resources:
        gpu=lambda w: GRID.training(w.pair)["gpus"],
        runtime=pair_resource("train", "runtime"),
        mem_mb=pair_resource("train", "mem_mb"),
        cpus_per_task=pair_resource("train", "cpus"),
    conda:
        ENV
    shell:
        "kdbench teacher-states {input.run} {output} --micro-batches {params.micro_batches} --threads {threads} "
        "> {log} 2>&1"
