"""The learning loop: feedback, the job queue, snapshots, training jobs, the evaluation gate and the adapter registry."""
