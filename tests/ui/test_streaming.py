"""/text2img streams: a client sees the x0 estimate as intermediate outputs before the final images, and `predict`
still returns only the final ones."""

import time


def test_text2img_streams_previews_before_the_final_images(client):
    started = time.perf_counter()
    job = client.submit("a red circle", steps=500, num_images=4, api_name="/text2img")
    final = job.result(timeout=300)
    elapsed = time.perf_counter() - started
    updates = job.outputs()  # every message the stream sent, the final one last
    previews = [u for u in updates[:-1] if isinstance(u[0], list) and u[0]]  # the live x0 estimates (ticks skip)
    assert elapsed > 2.5, f"the run took {elapsed:.1f} s, too short to show three previews; raise the steps"
    assert len(previews) >= 3, (len(previews), len(updates))
    assert updates[-1][1] == final[1] and "--steps 500" in final[1]  # the reproduce command comes with the end
    assert "x0 estimate, step" in str(previews[0][0])  # each preview captioned with its step
    assert "x0 estimate" not in str(final[0]) and "seed 0" in str(final[0])  # predict gives the final images
