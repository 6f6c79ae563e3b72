"""`sagegate console`: a web console over the local state (runs, gate executions, models, endpoints)."""
