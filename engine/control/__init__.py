"""Control maps for ControlNets: user inputs to maps (prepare), the map makers (maps, openpose), pose from a photo."""
