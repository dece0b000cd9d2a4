"""The command port: how the domain tells a printer's agent to act (pause, resume, cancel,
print) and what to watch, without knowing where the agent's connection lives."""
