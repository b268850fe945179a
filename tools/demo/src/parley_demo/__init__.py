"""`make demo`: brings the stack up and drives the platform's main job."""
