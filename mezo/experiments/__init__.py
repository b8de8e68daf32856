"""Experiment tooling shared by launch_experiment.py, run_mezo_paper_experiments.py,
analyze_mezo_results.py and test_reproduction_setup.py: presets, the paper's grids, SLURM
scripts, result analysis against the paper's published numbers, and environment checks."""
