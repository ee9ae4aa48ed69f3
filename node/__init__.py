"""The node side of the farm: what a PC offers (hardware probes) and, later, its gRPC agent."""
