"""The default offline describer (the scene describer) through the whole service, on real photos."""

from __future__ import annotations

import io

from PIL import Image
from skimage import data

from tests.integration.test_api import submit


def jpeg_of(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_real_photos_get_real_descriptions_end_to_end(client, run_worker, scene_describer):
    cat = submit(client, jpeg_of(data.chelsea())).get_json()["job_id"]
    coffee = submit(client, jpeg_of(data.coffee())).get_json()["job_id"]
    page = submit(client, jpeg_of(data.page())).get_json()["job_id"]
    astronaut = submit(client, jpeg_of(data.astronaut())).get_json()["job_id"]
    run_worker(describer=scene_describer)

    cat_result = client.get(f"/api/v1/result/{cat}").get_json()
    assert "cat" in cat_result["image_description"].lower()
    assert cat_result["generated_by"] == scene_describer.name
    assert cat_result["generated_by"].startswith("builtin:scene(ssdlite-person,centernet,")
    assert cat_result["tags"][0]["label"].lower().endswith("cat") and 0 < cat_result["tags"][0]["score"] <= 1
    assert cat_result["text"] is None  # OCR did not run on a photo of a cat

    coffee_text = client.get(f"/api/v1/result/{coffee}").get_json()["image_description"].lower()
    assert any(word in coffee_text for word in ("espresso", "cup", "coffee"))

    astronaut_text = client.get(f"/api/v1/result/{astronaut}").get_json()["image_description"]
    assert astronaut_text == "A photo of a smiling person."

    page_result = client.get(f"/api/v1/result/{page}").get_json()
    assert "segmentation" in page_result["image_description"].lower()
    assert any("segmentation" in line["text"].lower() for line in page_result["text"])
