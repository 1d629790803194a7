"""The app launched the ordinary Gradio way: generations requested through the API run on the engine's model thread."""

import threading

from engine.generate import Engine


def test_api_generations_run_on_the_engines_model_thread(tiny_root):
    import app
    from gradio_client import Client
    from ui.models import folder_choices

    engine = Engine()
    threads = []
    generate = engine._generate

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return generate(*args, **kwargs)

    engine._generate = recording
    demo = app.create_app(engine, folder_choices(tiny_root, steps=2))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        client = Client(url, verbose=False)
        replies = [client.predict(f"a red circle {i}", steps=2, api_name="/text2img") for i in range(2)]
    finally:
        demo.close()
    assert replies[0][0][0]["caption"] == "seed 0"
    # the two requests, and the meter's calibration runs before the first: all on the model thread
    assert len(threads) >= 2 and set(threads) == {engine.runner.thread}
    assert engine.runner.thread.name == "model" and engine.runner.thread is not threading.main_thread()
