"""The command line's room: what `python -m minitome.sample` (minitome/sample.py) adds around the library.

flags → one frozen settings record → the run → the PNG's text, through one table of fields:

- flags.py     the flags, and what the command lines share (a step count's message, a check named by its flag)
- settings.py  the settings record, made once from the flags over a --from PNG's settings, every flag checked
- methods.py   the method flags made the methods' configs, and the values that would make a method do nothing
- png_text.py  the PNG's text: written from the record and read back into it, one row per field
- png_values.py how each field's value is written and read back (numbers, names, ToMe's pairs)
- hashes.py    the hashes the PNG names the files by (model, VAE, init image, LoRAs, embeddings)
- add_ons.py   --lora and --embedding; images.py the --init-image; device.py the device, dtype and memory
- output.py    the PNG files, reserved before sampling and written whole
- preview.py   --preview: one PNG rewritten after each step with the image the step's estimate x̂₀ shows
- console.py   what is said on the terminal, Ctrl-C and SIGTERM, and how a run ends (its exit status)

The library never imports this package; the lab's tools use flags.py, device.py and add_ons.py.
"""
