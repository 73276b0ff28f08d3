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
        "kdbench train {input.run:q} --threads {threads} > {log:q} 2>&1"


# With teacher_cache: the teacher's hidden states on one stream of dataset micro-batches, which every
# dataset-source run of the pair at that seed reads (kdbench.teacher_states); each of those train jobs
# takes the file as an input and finds it by its name. Its spec holds no method setting, so a run
# added to the grid later reuses it and the finished runs stay finished.
rule teacher_states_spec:
    output:
        f"{RES}/teacher_states/{{pair}}/seed{{seed}}/{{key}}.yaml",
    params:
        run=teacher_states_spec,
    log:
        f"{RES}/logs/teacher_states/{{pair}}/seed{{seed}}/{{key}}.spec.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/write_run.py"


rule teacher_states:
    input:
        unpack(teacher_states_inputs),
    output:
        f"{RES}/teacher_states/{{pair}}/seed{{seed}}/{{key}}.safetensors",
    log:
        f"{RES}/logs/teacher_states/{{pair}}/seed{{seed}}/{{key}}.log",
    threads: 1  # as the train jobs': the same threads give the same bits
    resources:  # where the students train: one GPU when they train on GPUs (kdbench.gpus), else the CPU
        gpu=lambda w: min(teacher_states_spec(w)["gpus"], 1),
        runtime=pair_resource("train", "runtime"),
        mem_mb=pair_resource("train", "mem_mb"),
        cpus_per_task=pair_resource("train", "cpus"),
    conda:
        ENV
    shell:
        "kdbench teacher-states {input.spec:q} {output:q} --threads {threads} > {log:q} 2>&1"
