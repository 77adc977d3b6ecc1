"""The nodes of a Handrail graph, one module each: agent, policy_check, approval, execute,
classify_error."""
