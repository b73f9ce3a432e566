"""Running jobs: executors (submitit local | slurm), ledger, submission, status, cancel."""
