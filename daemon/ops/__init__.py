"""The operations a user asks of datesync, one home each, shared by the API and the CLI: request a batch, cancel,
retry, read a batch, list gaps, the status summary. Each validates once, refuses with one set of message keys
(daemon.ops.problems, rendered in English or Chinese by daemon.ops.messages) and runs as one transaction with its
wake-up and its event. The API's handlers and the CLI's commands are thin adapters over it."""
