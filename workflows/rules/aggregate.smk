# Evaluation results → per-pair tables (ours beside the published numbers, paired-bootstrap
# significance of each +policy run against its base, the paper's claims) and plots; then the main
# table over all pairs.


rule tables:
    input:
        results=lambda w: eval_results(w, pair=w.pair),
        predictions=lambda w: eval_results(w, pair=w.pair, predictions=True),
        reference=REFERENCE_CSVS,
        labels="evaluation/reference/labels.yaml",
    output:
        md=report(f"{RES}/tables/{{pair}}/main.md", category="Tables", subcategory="{pair}"),
        csv=f"{RES}/tables/{{pair}}/main.csv",
        tex=f"{RES}/tables/{{pair}}/main.tex",
        significance=report(f"{RES}/tables/{{pair}}/significance.md", category="Tables", subcategory="{pair}"),
        claims=report(f"{RES}/tables/{{pair}}/claims.md", category="Tables", subcategory="{pair}"),
    params:
        methods=" ".join(["teacher", *CFG["methods"]]),
        sets=" ".join(CFG["sets"]),
        reference=reference_args,
    log:
        f"{RES}/logs/tables/{{pair}}.log",
    conda:
        ENV
    shell:
        "kdbench aggregate --results {input.results} --pair {wildcards.pair} --methods {params.methods}"
        " --sets {params.sets} {params.reference} --labels {input.labels} --out-md {output.md}"
        " --out-csv {output.csv} --out-tex {output.tex} --significance-md {output.significance}"
        " --claims-md {output.claims} > {log} 2>&1"


rule main_table:
    input:
        md=expand(f"{RES}/tables/{{pair}}/main.md", pair=CFG["pairs"]),
        csv=expand(f"{RES}/tables/{{pair}}/main.csv", pair=CFG["pairs"]),
    output:
        md=f"{RES}/tables/main.md",
        csv=f"{RES}/tables/main.csv",
    log:
        f"{RES}/logs/main_table.log",
    conda:
        ENV
    shell:
        "kdbench combine-tables --md {input.md} --csv {input.csv} --out-md {output.md} --out-csv {output.csv}"
        " > {log} 2>&1"


rule plots:
    input:
        metrics=lambda w: [f"{RES}/runs/{w.pair}/{m}/seed{s}/metrics.jsonl" for m in CFG["methods"] for s in CFG["seeds"]],
        table=f"{RES}/tables/{{pair}}/main.csv",
    output:
        latf=report(f"{RES}/plots/{{pair}}/latf_ratio.png", category="Plots", subcategory="{pair}"),
        curves=report(f"{RES}/plots/{{pair}}/training_curves.png", category="Plots", subcategory="{pair}"),
        tau=report(f"{RES}/plots/{{pair}}/temperature.png", category="Plots", subcategory="{pair}"),
        published=report(f"{RES}/plots/{{pair}}/ours_vs_published.png", category="Plots", subcategory="{pair}"),
    log:
        f"{RES}/logs/plots/{{pair}}.log",
    conda:
        ENV
    shell:
        "kdbench plots --metrics {input.metrics} --latf-png {output.latf} --curves-png {output.curves}"
        " --tau-png {output.tau} --table-csv {input.table} --published-png {output.published} > {log} 2>&1"
