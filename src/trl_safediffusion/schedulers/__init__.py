from .ddim_with_logprob import DDPOSchedulerOutput, ddim_step_std, ddim_step_with_logprob, gaussian_log_prob

__all__ = ["DDPOSchedulerOutput", "ddim_step_std", "ddim_step_with_logprob", "gaussian_log_prob"]
