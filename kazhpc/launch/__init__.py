"""Running the pipeline on SLURM: cluster profiles, containers, submitit submission, sbatch rendering."""
