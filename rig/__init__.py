"""The wiring: where the learning core (moss_vla/), the hardware and real-time parts (robot/) and the
tasks (tasks/) are joined into rigs and commands.

Layers, each importing only those below it (tests/test_layers.py fails on an arrow back up):

    moss_vla/   learning: STSS / MOSS, the policy, the episode store, training
    robot/      cameras, arm, safety, teleop, the control loop, simulated arm and camera
    tasks/      stimuli, the display driver, scoring, the scripted operator
    rig/        live and simulated rig builders, sessions, the moss-* rig commands, sim eval / bench, the demo
"""
