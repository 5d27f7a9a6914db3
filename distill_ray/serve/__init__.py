"""Ray Serve applications (deploy/*.yaml) and their client.

    teacher.py        teacher scoring service: POST /score -> the teacher's top-k log-probs (torch or vLLM)
    student.py        student serving: OpenAI-compatible /v1/completions and /v1/chat/completions
    openai_schema.py  the student's request bodies
    common.py         JSON errors, bad input as 400, bearer-token auth, binding an app to its args
    apps.py           deploy/*.yaml applications from Python, with overrides (tests, benchmarks)
    client.py         TeacherEndpointClient: a training run's teacher top-k from the scoring service
"""
