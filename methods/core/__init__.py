"""What the orchestrator and the plug-ins both need, below both of them.

Device picking, frozen-encoder loading and the predictor primitives live
here so that ``methods/`` never imports ``orchestrator/`` (dependencies point
one way: experiments -> orchestrator -> methods, datasets). Importing this
package changes no environment variable and loads no model.
"""
