# The grid's inputs: generated instruction data (the embedded default) or the real sets prepared
# from the public releases (data.source: releases), local tokenizers, initial models (random-init,
# copied from the hub, converted once from a GGUF file, or cut from the teacher's), and a
# cross-tokenizer pair's vocab_map.


rule data:
    output:
        train=f"{RES}/data/train.jsonl",
        valid=f"{RES}/data/valid.jsonl",
        sets=expand(f"{RES}/data/eval/{{name}}.jsonl", name=GRID.axes["sets"]),
    params:
        out=lambda w, output: os.path.dirname(output.train),
        data=CFG["data"],
    log:
        f"{RES}/logs/data.log",
    conda:
        ENV
    shell:
        "kdbench data --out {params.out:q} --seed {params.data[seed]:q} --n-train {params.data[n_train]:q}"
        " --n-valid {params.data[n_valid]:q} --n-eval {params.data[n_eval]:q} > {log:q} 2>&1"


rule prepare_data:
    """One real data file (train, valid or an eval set) from its public release (data/README.md)."""
    input:
        unpack(prepare_inputs),
    output:
        f"{RES}/data/real/{{name}}.jsonl",
    params:
        args=prepare_args,
    log:
        f"{RES}/logs/prepare_data/{{name}}.log",
    conda:
        ENV
    shell:
        "kdbench prepare-eval {params.args:q} --out {output:q} > {log:q} 2>&1"


rule tokenizer:
    input:
        GRID.data_files["train"],
    output:
        directory(f"{RES}/tokenizer"),
    params:
        vocab_size=CFG["tokenizer"]["vocab_size"],
    log:
        f"{RES}/logs/tokenizer.log",
    conda:
        ENV
    shell:
        "kdbench tokenizer --data {input:q} --vocab-size {params.vocab_size:q} --out {output:q} > {log:q} 2>&1"


rule tokenizer_unigram:
    """The second generated tokenizer (Unigram, Metaspace `▁`), for a random-init role of a
    cross-tokenizer pair that asks for it (`tokenizer: {generated: unigram}`)."""
    input:
        GRID.data_files["train"],
    output:
        directory(f"{RES}/tokenizer-unigram"),
    params:
        vocab_size=CFG["tokenizer"]["vocab_size"],
    log:
        f"{RES}/logs/tokenizer-unigram.log",
    conda:
        ENV
    shell:
        "kdbench tokenizer --kind unigram --data {input:q} --vocab-size {params.vocab_size:q} --out {output:q}"
        " > {log:q} 2>&1"


rule init_model:
    input:
        unpack(init_model_inputs),
    output:
        directory(f"{RES}/models/{{pair}}/{{role}}-init"),
    params:
        sources=lambda w: [a for key, path in init_model_inputs(w).items() if key != "pair" for a in (f"--{key}", path)],
    log:
        f"{RES}/logs/init_model/{{pair}}/{{role}}.log",
    resources:
        runtime=pair_resource("init", "runtime"),
        mem_mb=pair_resource("init", "mem_mb"),
        cpus_per_task=pair_resource("init", "cpus"),
    conda:
        ENV
    shell:
        "kdbench init-model --pair {input.pair:q} --role {wildcards.role:q} {params.sources:q}"
        " --out {output:q} > {log:q} 2>&1"


rule vocab_map:
    """A cross-tokenizer pair's vocabulary artifact (common sub-vocabulary, X-Token projection) from
    its two tokenizers alone, read by the runs of cross-tokenizer methods (docs/METHODS.md §6)."""
    input:
        unpack(vocab_map_inputs),
    output:
        map=f"{RES}/vocab_maps/{{pair}}/vocab_map.safetensors",
        report=f"{RES}/vocab_maps/{{pair}}/vocab_map.json",
    log:
        f"{RES}/logs/vocab_map/{{pair}}.log",
    conda:
        ENV
    shell:
        "kdbench vocab-map --student {input.student:q} --teacher {input.teacher:q} --out {output.map:q} > {log:q} 2>&1"
