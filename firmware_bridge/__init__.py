"""Framed serial link to microcontrollers and a simulated MCU: issue 7."""
