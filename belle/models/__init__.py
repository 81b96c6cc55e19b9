"""Model weights: conversion, decryption and loading."""
