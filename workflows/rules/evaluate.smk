# Evaluation: one job per (run, set) by default, looping over decoding seeds without reloading the
# model; with `evaluation.job: run`, one job per run over every set of the grid (the model and the
# libraries are loaded once: on small models that start-up is most of the time).

EVAL_OUT = f"{RES}/evals/{{pair}}/{{method}}/seed{{seed}}"
EV = CFG["evaluation"]
EVAL_PROTOCOL = (  # the decoding protocol, identical for every evaluation job
    f"--seeds {' '.join(str(s) for s in EV['decoding_seeds'])} --max-new-tokens {EV['max_new_tokens']}"
    f" --max-prompt-tokens {EV['max_prompt_tokens']} --batch-size {EV['batch_size']}"
    f" --no-repeat-ngram-size {EV['no_repeat_ngram_size']} --prompt-format {EV['prompt_format']}"
    + (" --greedy" if EV["greedy"] else "")
)

if CFG["evaluation"]["job"] == "run":

    ruleorder: evaluate_run > evaluate

else:

    ruleorder: evaluate > evaluate_run


rule evaluate:
    input:
        model=eval_model,
        data=lambda w: GRID.data_files[w.set],
    output:
        result=f"{EVAL_OUT}/{{set}}.json",
        predictions=f"{EVAL_OUT}/{{set}}.predictions.jsonl",
    params:
        protocol=EVAL_PROTOCOL,
    log:
        f"{EVAL_OUT}/{{set}}.log",
    threads: 1
    resources:  # one GPU, claimed by the job itself (kdbench.gpus); the rest from the pair file
        gpu=1,
        runtime=pair_resource("evaluate", "runtime"),
        mem_mb=pair_resource("evaluate", "mem_mb"),
        cpus_per_task=pair_resource("evaluate", "cpus"),
    conda:
        ENV
    shell:
        "kdbench evaluate --model {input.model} --data {input.data} --set {wildcards.set}"
        " --run {wildcards.pair}/{wildcards.method}/seed{wildcards.seed} --out {output.result}"
        " --predictions {output.predictions} {params.protocol} --threads {threads} > {log} 2>&1"


rule evaluate_run:
    input:
        model=eval_model,
        data=[GRID.data_files[x] for x in GRID.axes["sets"]],
    output:
        result=[f"{EVAL_OUT}/{x}.json" for x in GRID.axes["sets"]],
        predictions=[f"{EVAL_OUT}/{x}.predictions.jsonl" for x in GRID.axes["sets"]],
    params:
        sets=" ".join(GRID.axes["sets"]),
        protocol=EVAL_PROTOCOL,
    log:
        f"{EVAL_OUT}/evaluate.log",
    threads: 1
    resources:
        gpu=1,
        runtime=pair_resource("evaluate", "runtime", times=len(GRID.axes["sets"])),
        mem_mb=pair_resource("evaluate", "mem_mb"),
        cpus_per_task=pair_resource("evaluate", "cpus"),
    conda:
        ENV
    shell:
        "kdbench evaluate --model {input.model} --data {input.data} --set {params.sets}"
        " --run {wildcards.pair}/{wildcards.method}/seed{wildcards.seed} --out {output.result}"
        " --predictions {output.predictions} {params.protocol} --threads {threads} > {log} 2>&1"

rule lm_eval:
    """evaluation.lm_eval_tasks (evaluation/tasks, lm-eval's own, or task YAMLs) on one model, over
    the decoding seeds: `snakemake results/lm_eval/{pair}/{method}/seed{seed}.json` or `lm_eval_all`."""
    input:
        model=eval_model,
        template=f"{LM_EVAL_INCLUDE}/_default_template_yaml",  # kdbench's tasks: their folder is indexed
        tasks=LM_EVAL_INPUTS,
    output:
        f"{RES}/lm_eval/{{pair}}/{{method}}/seed{{seed}}.json",
    params:
        tasks=" ".join(LM_EVAL_TASKS),
        include=lambda w, input: os.path.dirname(input.template),
        protocol=EVAL_PROTOCOL,
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
        "kdbench lm-eval --model {input.model} --include-path {params.include} --tasks {params.tasks}"
        " --run {wildcards.pair}/{wildcards.method}/seed{wildcards.seed} {params.protocol} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule lm_eval_all:
    input:
        LM_EVAL_TABLES,
