"""Care-team workflow: threads, pools and routing, SLA clocks, escalation, digests, appointments."""
