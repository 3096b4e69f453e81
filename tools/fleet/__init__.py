"""The fleet operator's side of rollouts: the fleet's reported rollout documents (``view``) and
the controller that widens a rollout or aborts it on the devices' results (``controller``)."""
