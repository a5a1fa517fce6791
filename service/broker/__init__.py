"""Redis plumbing, in one place: the arq queue (the only module that imports arq), the
pub/sub channel, the shared per-host request budget and the embedded server that
`backsync dev` starts. Redis only carries work; the database stays the truth."""
