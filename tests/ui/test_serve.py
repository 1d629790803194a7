"""`python app.py`'s way of serving: generations requested through the API run on the main thread."""

import threading

from engine.generate import Engine


def test_app_serve_runs_generations_on_the_main_thread(tiny_root):
    import app
    from gradio_client import Client
    from ui.models import folder_choices

    engine = Engine()
    threads, replies, failures = [], [], []
    generate = engine._generate

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return generate(*args, **kwargs)

    engine._generate = recording
    stop = threading.Event()

    def client(url: str) -> None:
        try:
            replies.append(Client(url, verbose=False).predict("a red circle", steps=2, api_name="/text2img"))
        except Exception as exc:  # reported below; the server must stop either way
            failures.append(exc)
        finally:
            stop.set()

    app.serve(engine, app.create_app(engine, folder_choices(tiny_root, steps=2)), stop=stop, on_ready=client,
              quiet=True)
    assert not failures, failures
    assert replies and replies[0][0][0]["caption"] == "seed 0"
    assert threads == [threading.main_thread()]
