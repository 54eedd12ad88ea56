"""The experiment harness, apart from the library it measures: grids of training cells under label noise
(`robalign bench robustness`), their reports and plots, learning-curve statistics, early stopping scored
honestly, and the demo (`robalign demo`). Training itself needs none of it.

    spec       a sweep's settings, its cells and where they are stored
    cells      one cell: data split, run config, training under a lock, cached result
    sampled_pairs  the built-in task's pairs with responses sampled from the model (--data verifiable-sampled)
    sweep      every cell of a grid in turn, sharing the base model and its reference log-probs
    summary    mean ± std over seeds, paired differences
    report     tables, paired intervals, results.csv and report.md
    plots      the report's figures
    curves     the long-training sections of the report (last vs best epoch, cost of noise)
    selection  early stopping on a noisy validation half, scored on the clean other half
    demo       `robalign demo`
    cli        `robalign bench` flags and checks
"""
