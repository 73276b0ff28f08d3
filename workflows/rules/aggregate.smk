# Evaluation results → tables: per (table, pair) ours beside the published numbers and the paired-
# bootstrap significance of each +policy row against its base; per table, the pairs stacked; per
# pair, the paper's claims over every run of the grid, and plots. Each table is also a target rule
# of its own name (`snakemake table1`).


rule tables:
    input:
        results=lambda w: eval_results(table=w.table, pair=w.pair),
        predictions=lambda w: eval_results(table=w.table, pair=w.pair, predictions=True),
        reference=REFERENCE_CSVS,
        labels="evaluation/reference/labels.yaml",
    output:
        md=f"{RES}/tables/{{table}}/{{pair}}/main.md",
        csv=f"{RES}/tables/{{table}}/{{pair}}/main.csv",
        tex=f"{RES}/tables/{{table}}/{{pair}}/main.tex",
        significance=report(
            f"{RES}/tables/{{table}}/{{pair}}/significance.md",
            caption="../report/significance.rst",
            category="Significance",
            subcategory="{table}",
        ),
    params:
        methods=lambda w: ["teacher", *GRID.tables[w.table]["all"]["methods"]],
        sets=lambda w: GRID.tables[w.table]["all"]["sets"],
        finished=finished_elsewhere,
        reference=reference_args,
    log:
        f"{RES}/logs/tables/{{table}}/{{pair}}.log",
    localrule: True  # seconds of CPU: never queued on a cluster
    conda:
        ENV
    shell:
        "kdbench aggregate --results {input.results:q} {params.finished:q} --pair {wildcards.pair:q}"
        " --methods {params.methods:q} --sets {params.sets:q} {params.reference:q} --labels {input.labels:q}"
        " --out-md {output.md:q} --out-csv {output.csv:q} --out-tex {output.tex:q}"
        " --significance-md {output.significance:q} > {log:q} 2>&1"


rule combine_table:
    input:
        md=lambda w: [f"{RES}/tables/{w.table}/{pair}/main.md" for pair in GRID.tables[w.table]["pairs"]],
        csv=lambda w: [f"{RES}/tables/{w.table}/{pair}/main.csv" for pair in GRID.tables[w.table]["pairs"]],
    output:
        md=report(f"{RES}/tables/{{table}}.md", caption="../report/table.rst", category="Tables"),
        csv=f"{RES}/tables/{{table}}.csv",
    params:
        title=lambda w: GRID.tables[w.table]["title"],
    log:
        f"{RES}/logs/tables/{{table}}.log",
    localrule: True  # seconds of CPU: never queued on a cluster
    conda:
        ENV
    shell:
        "kdbench combine-tables --title {params.title:q} --md {input.md:q} --csv {input.csv:q}"
        " --out-md {output.md:q} --out-csv {output.csv:q} > {log:q} 2>&1"


rule claims:
    input:
        results=lambda w: eval_results(pair=w.pair),
        predictions=lambda w: eval_results(pair=w.pair, predictions=True),
        claims=CLAIMS,
    output:
        md=report(
            f"{RES}/tables/claims/{{pair}}/claims.md", caption="../report/claims.rst", category="Claims", subcategory="{pair}"
        ),
        csv=f"{RES}/tables/claims/{{pair}}/claims.csv",
    log:
        f"{RES}/logs/claims/{{pair}}.log",
    localrule: True  # seconds of CPU: never queued on a cluster
    conda:
        ENV
    shell:
        "kdbench aggregate --results {input.results:q} --pair {wildcards.pair:q}"
        " --claims {input.claims:q} --claims-md {output.md:q} --claims-csv {output.csv:q} > {log:q} 2>&1"


rule plots:
    input:
        metrics=lambda w: [f"{RES}/runs/{p}/{m}/seed{s}/metrics.jsonl" for p, m, s in GRID.runs(pair=w.pair)],
        tables=lambda w: [f"{RES}/tables/{t}/{w.pair}/main.csv" for t in GRID.tables if w.pair in GRID.tables[t]["pairs"]],
    output:
        latf=report(f"{RES}/plots/{{pair}}/latf_ratio.png", caption="../report/plot_latf.rst", category="Plots", subcategory="{pair}"),
        curves=report(
            f"{RES}/plots/{{pair}}/training_curves.png", caption="../report/plot_curves.rst", category="Plots", subcategory="{pair}"
        ),
        tau=report(f"{RES}/plots/{{pair}}/temperature.png", caption="../report/plot_tau.rst", category="Plots", subcategory="{pair}"),
        published=report(
            f"{RES}/plots/{{pair}}/ours_vs_published.png",
            caption="../report/plot_published.rst",
            category="Plots",
            subcategory="{pair}",
        ),
    log:
        f"{RES}/logs/plots/{{pair}}.log",
    localrule: True  # seconds of CPU: never queued on a cluster
    conda:
        ENV
    shell:
        "kdbench plots --metrics {input.metrics:q} --latf-png {output.latf:q} --curves-png {output.curves:q}"
        " --tau-png {output.tau:q} --table-csv {input.tables:q} --published-png {output.published:q} > {log:q} 2>&1"


rule lm_eval_table:
    input:
        lambda w: lm_eval_results(pair=w.pair),
    output:
        md=report(f"{RES}/tables/lm_eval/{{pair}}.md", caption="../report/lm_eval.rst", category="lm-eval"),
        csv=f"{RES}/tables/lm_eval/{{pair}}.csv",
    params:
        methods=lambda w: list(dict.fromkeys(m for _, m, _ in lm_eval_runs(w.pair))),
    log:
        f"{RES}/logs/tables/lm_eval/{{pair}}.log",
    conda:
        ENV
    shell:
        "kdbench lm-eval-table --results {input:q} --pair {wildcards.pair:q} --methods {params.methods:q}"
        " --out-md {output.md:q} --out-csv {output.csv:q} > {log:q} 2>&1"


for table_name in GRID.tables:  # `snakemake table1`: one target rule per table

    rule:
        name:
            table_name
        input:
            table_targets(table_name),
