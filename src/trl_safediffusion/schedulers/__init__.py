from .ddim_with_logprob import DDPOSchedulerOutput, ddim_step_std, ddim_step_with_logprob, gaussian_log_prob
from .flow_sde import flow_ode_jump, flow_sde_step_std, flow_sde_step_with_logprob

__all__ = [
    "DDPOSchedulerOutput",
    "ddim_step_std",
    "ddim_step_with_logprob",
    "flow_ode_jump",
    "flow_sde_step_std",
    "flow_sde_step_with_logprob",
    "gaussian_log_prob",
]
