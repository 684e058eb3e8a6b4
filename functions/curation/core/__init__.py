"""The pure curation job: label configs and their checks, batch lines as Label Studio tasks, the Label Studio client, reviewed tasks as an evaluation dataset."""
