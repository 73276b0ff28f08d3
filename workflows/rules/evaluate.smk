# Evaluation: one job per (run, set) by default, looping over decoding seeds without reloading the
# model; with `evaluation.job: run`, one job per run over every set of the grid (the model and the
# libraries are loaded once: on small models that start-up is most of the time).

from kdbench.eval_protocol import of_grid as eval_protocol_of_grid

EVAL_OUT = f"{RES}/evals/{{pair}}/{{method}}/seed{{seed}}"
EVAL_PROTOCOL = f"{RES}/eval_protocol.yaml"  # the decoding protocol, read by every evaluation job


rule eval_protocol:
    """The grid's decoding protocol, resolved once (kdbench.eval_protocol): `kdbench evaluate` and
    `kdbench lm-eval` read it; a changed setting reruns every evaluation."""
    output:
        EVAL_PROTOCOL,
    params:
        run=eval_protocol_of_grid(CFG["evaluation"]),  # the shim writes its `run` param as YAML
    log:
        f"{RES}/logs/eval_protocol.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/write_run.py"

if CFG["evaluation"]["job"] == "run":

    ruleorder: evaluate_run > evaluate

else:

    ruleorder: evaluate > evaluate_run


rule evaluate:
    input:
        model=eval_model,
        data=lambda w: GRID.data_files[w.set],
        protocol=EVAL_PROTOCOL,
    output:
        result=f"{EVAL_OUT}/{{set}}.json",
        predictions=f"{EVAL_OUT}/{{set}}.predictions.jsonl",
    log:
        f"{EVAL_OUT}/{{set}}.log",
    threads: 1
    resources:  # one GPU, claimed by the job itself (kdbench.gpus); the rest from the pair file
        gpu=1,
        runtime=eval_runtime,
        mem_mb=pair_resource("evaluate", "mem_mb"),
        cpus_per_task=pair_resource("evaluate", "cpus"),
    conda:
        ENV
    shell:
        "kdbench evaluate --model {input.model:q} --data {input.data:q} --set {wildcards.set:q}"
        " --run {wildcards.pair:q}/{wildcards.method:q}/seed{wildcards.seed:q} --out {output.result:q}"
        " --predictions {output.predictions:q} --protocol {input.protocol:q} --threads {threads} > {log:q} 2>&1"


rule evaluate_run:
    input:
        model=eval_model,
        data=[GRID.data_files[x] for x in GRID.axes["sets"]],
        protocol=EVAL_PROTOCOL,
    output:
        result=[f"{EVAL_OUT}/{x}.json" for x in GRID.axes["sets"]],
        predictions=[f"{EVAL_OUT}/{x}.predictions.jsonl" for x in GRID.axes["sets"]],
    params:
        sets=GRID.axes["sets"],
    log:
        f"{EVAL_OUT}/evaluate.log",
    threads: 1
    resources:
        gpu=1,
        runtime=eval_runtime,
        mem_mb=pair_resource("evaluate", "mem_mb"),
        cpus_per_task=pair_resource("evaluate", "cpus"),
    conda:
        ENV
    shell:
        "kdbench evaluate --model {input.model:q} --data {input.data:q} --set {params.sets:q}"
        " --run {wildcards.pair:q}/{wildcards.method:q}/seed{wildcards.seed:q} --out {output.result:q}"
        " --predictions {output.predictions:q} --protocol {input.protocol:q} --threads {threads} > {log:q} 2>&1"

rule lm_eval:
    """evaluation.lm_eval_tasks (evaluation/tasks, lm-eval's own, or task YAMLs) on one model, over
    the decoding seeds: `snakemake results/lm_eval/{pair}/{method}/seed{seed}.json` or `lm_eval_all`."""
    input:
        model=eval_model,
        template=f"{LM_EVAL_INCLUDE}/_default_template_yaml",  # kdbench's tasks: their folder is indexed
        tasks=LM_EVAL_INPUTS,
        protocol=EVAL_PROTOCOL,
    output:
        f"{RES}/lm_eval/{{pair}}/{{method}}/seed{{seed}}.json",
    params:
        tasks=LM_EVAL_TASKS,
        include=lambda w, input: os.path.dirname(input.template),
    log:
        f"{RES}/lm_eval/{{pair}}/{{method}}/seed{{seed}}.log",
    threads: 1
    resources:
        gpu=1,
        runtime=pair_resource("lm_eval", "runtime"),
        mem_mb=pair_resource("lm_eval", "mem_mb"),
        cpus_per_task=pair_resource("lm_eval", "cpus"),
    conda:
        ENV
    shell:
        "kdbench lm-eval --model {input.model:q} --include-path {params.include:q} --tasks {params.tasks:q}"
        " --run {wildcards.pair:q}/{wildcards.method:q}/seed{wildcards.seed:q} --protocol {input.protocol:q}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule lm_eval_all:
    input:
        LM_EVAL_TABLES,
