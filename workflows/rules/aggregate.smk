# Evaluation results → the main table (Markdown and CSV).


rule aggregate_main:
    input:
        eval_results,
    output:
        md=f"{RES}/tables/main.md",
        csv=f"{RES}/tables/main.csv",
    params:
        methods=" ".join(["teacher", *CFG["methods"]]),
        sets=" ".join(CFG["sets"]),
    log:
        f"{RES}/logs/aggregate_main.log",
    conda:
        ENV
    shell:
        "kdbench aggregate --results {input} --methods {params.methods} --sets {params.sets}"
        " --out-md {output.md} --out-csv {output.csv} > {log} 2>&1"
